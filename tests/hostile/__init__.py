"""A hostile stand-in for both providers, independent of mjasync.emulator, driven by hypothesis."""

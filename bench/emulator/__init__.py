"""The embedded emulator of Wallaroo pipeline inference and UbiOps deployment requests."""

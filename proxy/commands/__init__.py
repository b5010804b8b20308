"""The command-line subcommands other than `serve`: `demo`, `doctor`, `rotate-store-key`."""

"""The command-line subcommands other than `serve`: `init`, `demo`, `doctor`, `rotate-store-key`."""

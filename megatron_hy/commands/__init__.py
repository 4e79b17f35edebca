"""One module per `hy3` subcommand; each defines `register(subparsers)`."""

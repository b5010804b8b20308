"""`python -m proxy` is the same as the `gini-auth-proxy` command."""

import sys

from proxy.cli import main

sys.exit(main())

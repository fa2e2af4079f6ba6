"""`python -m kn`: the kn command (kn.cli) where its script is not on the PATH."""
import sys

from kn.cli import main

sys.exit(main())

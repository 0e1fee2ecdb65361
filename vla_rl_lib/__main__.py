import sys

from vla_rl_lib.training.cli import main

sys.exit(main())

import sys

from nri_optimizer.cli import main

sys.exit(main())

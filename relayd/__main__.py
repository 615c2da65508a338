"""``python -m relayd`` runs the daemon, like the ``relayd`` console script."""

from relayd.daemon import main

raise SystemExit(main())

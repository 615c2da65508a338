"""``python -m relayd`` runs the daemon, like the ``relayd`` console script."""

from relayd.supervisor import main

raise SystemExit(main())

"""``python -m procs.cli`` = ``smtm``."""
from . import main

raise SystemExit(main())

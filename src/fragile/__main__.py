from fragile.cli import main

raise SystemExit(main())

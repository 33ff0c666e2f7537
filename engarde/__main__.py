from engarde.cli import main

raise SystemExit(main())

from pairsmith.cli.main import main

raise SystemExit(main())

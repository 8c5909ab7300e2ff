from pairsmith.service.cli import main

raise SystemExit(main())

from podserve.cli import main

raise SystemExit(main())

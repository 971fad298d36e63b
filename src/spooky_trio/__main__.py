from spooky_trio.cli import main

raise SystemExit(main())

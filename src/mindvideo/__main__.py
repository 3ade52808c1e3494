from mindvideo.cli.main import main

raise SystemExit(main())

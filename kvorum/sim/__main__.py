from kvorum.sim.runner import main

raise SystemExit(main())

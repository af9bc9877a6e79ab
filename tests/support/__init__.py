"""What the tests share and nothing else: private servers, skip-or-fail, polling, the guard
against the machine's standard ports. Test modules import from here, never from each other."""

"""The only socket code: connections to job servers, timeouts, reconnects and server lists."""

"""pulse_trio: the Trio transport for pulse_core (open_session, the emulator and the CLI)."""

"""Tests of pulse_trio's adapter: open_session() against the emulator, and the examples."""

"""Tests of pulse_core, the sans-IO engine, and the helpers only they use."""

"""Tests of the pulse command (pulse_trio.cli), run as a user runs it."""

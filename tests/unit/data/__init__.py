"""Test data and Hypothesis strategies shared by the codec, command and row tests."""

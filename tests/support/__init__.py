"""Helpers shared by the test tiers: daemons started and stopped by the tests."""

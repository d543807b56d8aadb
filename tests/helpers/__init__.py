"""Helpers shared by the tests: tiny builders, process helpers, and the servers and browser they drive."""

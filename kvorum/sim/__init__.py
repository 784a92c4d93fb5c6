"""Deterministic simulation of kvorum consensus groups, and the checkers it uses."""

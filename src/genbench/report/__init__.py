"""Leaderboards, plots and the HTML report built from finished run directories."""

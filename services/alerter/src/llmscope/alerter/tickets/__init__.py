"""Tickets in the team's tracker for critical incidents (GitHub Issues, Jira, GitLab)."""

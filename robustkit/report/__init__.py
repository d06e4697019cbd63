"""Tables and plots of verification results."""

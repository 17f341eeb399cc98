"""The running app, the only door for front ends: visitors, money, recovery, the backend."""

"""What lasts on disk: the journal, files and videos."""

"""Records of runs: run folders, the board store, seeds boards, merge, tables, figures and the site."""

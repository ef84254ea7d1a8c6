"""`make bench`: the receiver measured against the baselines a user would otherwise pick."""

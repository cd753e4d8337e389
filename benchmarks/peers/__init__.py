"""blokrun against its peers (Burr, LangGraph, DBOS) on one workload: ``make bench-peers``."""

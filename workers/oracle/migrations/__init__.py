"""The oracle's migration set (shared/migrations): its tables, from requests to v_stuck."""

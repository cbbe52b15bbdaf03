"""Ray clusters and OSMO: connect or start Ray, driver output, OSMO node helpers, render/validate, Ray Jobs submit."""

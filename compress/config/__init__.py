"""Pipeline configuration: YAML -> typed, validated models with visible defaults."""

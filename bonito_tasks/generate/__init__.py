"""Generate stage: Bonito prompts on vLLM, parsed into (input, output) examples."""

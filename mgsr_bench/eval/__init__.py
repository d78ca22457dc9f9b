"""Evaluation: generation and ROUGE-L / exact match as MiniLLM and DistiLLM score students."""

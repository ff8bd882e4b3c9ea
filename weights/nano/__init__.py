"""`nano`: NExT-GPT's architecture at small sizes, trained here on a synthetic world."""

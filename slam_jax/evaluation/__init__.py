"""Evaluation: pair metrics (sBLIMP, sStoryCloze, tStoryCloze, sWUGGY, SALMon), generation and Auto-BLEU."""

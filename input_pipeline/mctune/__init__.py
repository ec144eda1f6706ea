"""MCTune (arXiv 2406.16229): linguistic-complexity controls of a text and control-tagged instruction
data. Imports run downwards: taggers -> controls -> data -> source (the only one that knows the
trainer's config and Grain); demo.py makes the generated ShapesWorld description corpus."""

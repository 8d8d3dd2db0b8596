"""Does a tuned text encoder help other tasks than text-to-image? (issue 23, item 5; open
question 2 of TextCraftor, whose §4.4 shows its encoder in image-to-image and inpainting.)

On ShapesWorld two editing tasks are scored exactly by the world's oracle, with diffusers' own
``StableDiffusionImg2ImgPipeline`` and ``StableDiffusionInpaintPipeline`` (the 4-channel UNet
path) built from the world's components and driven by the base or the tuned text encoder, on
the same scenes and the same noise:

- ``recolour``: an image of one shape and a prompt naming another colour, img2img at a few
  strengths; the oracle says whether the shape now has the asked colour and kept the rest.
- ``inpaint``: an image of one shape, a mask over the empty side opposite it and a prompt
  naming both shapes; the oracle reads the new shape inside the mask (shape, colour, size,
  position) and the old one outside it, and the pixels outside the mask are compared.

Modules, each with one job: ``config`` (settings and their checks, no torch), ``masks``
(position masks and the mask check), ``items`` (the tasks' scenes and prompts), ``pipelines``
(the diffusers pipelines and one call of each), ``scores`` (the oracle's reading),
``table`` (means, intervals and paired gains), ``run`` (the command,
``python -m textcraftor.image_tasks``).
"""

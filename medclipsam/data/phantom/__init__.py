"""The phantom world: deterministic procedural stand-ins for the paper's three data sets.

Used offline (notebooks, CI, tests) and to train the toy CLIP and SAM models. Three tasks:

- ``"breast"``: B-mode breast ultrasound (linear or sector field, Rayleigh speckle after log
  compression, skin / fat / fibroglandular / muscle layers, depth attenuation). Classes
  ``benign`` (oval, smooth, posterior enhancement), ``malignant`` (irregular or spiculated, may be
  taller than wide, posterior shadowing) and ``normal`` (empty mask). Decoys: anechoic cysts
  (darker than any lesion) and acoustic shadow bands, so "the darkest region" is usually *not*
  the lesion.
- ``"brain"``: axial post-contrast T1 MRI (scalp fat, skull, grey/white matter, ventricles).
  Classes ``glioma`` (irregular, ring enhancing, necrotic core, oedema; one hemisphere),
  ``meningioma`` (round, homogeneous, on the dura), ``pituitary`` (small, midline, near the
  skull base, drawn at the centre-bottom) and ``normal``. Decoys: enhancing venous sinuses,
  choroid plexus, vessels and scalp fat, brighter than any tumour, so "the brightest region" is
  usually *not* the tumour.
- ``"xray"``: PA chest X-ray. The mask is both lungs (two connected components, one each side
  of the midline: the multi-box case). Classes ``normal`` and ``pneumonia`` (patchy opacities
  inside the lungs; the mask stays the lungs).

Side convention (stated once, used in every caption and ``meta["location"]``):

- brain and chest X-ray use the **radiological convention**: the patient's right is on the
  image's left. A tumour whose centroid is in the left half of the image (column < W/2) is in
  the "right hemisphere"; the lung in the image's left half is the "right lung".
- breast ultrasound has no patient side in one frame: "left"/"right" there mean the image's
  left/right as displayed, and "upper"/"lower" mean shallow/deep.

Every sample is a pure function of ``(task, seed, size, label)``. Geometry is drawn in
coordinates scaled by ``min(H, W)``, so non-square images are wider or taller, not stretched.

Modules: ``world`` (the classes and prompts, :class:`PhantomSample`, the drawing helpers and the
caption writer every task shares) -> ``breast``, ``brain``, ``xray`` (one task each: how its
images are drawn and what its captions say) -> ``dataset`` (:func:`generate_sample`, the data set
views, folders on disk, the pointing-game baseline).
"""

from ...vocab import TASKS
from .dataset import (
    PhantomDataset,
    PhantomPairs,
    caption_words,
    generate_sample,
    intensity_rule_point,
    pointing_hit,
    pointing_verdict,
    write_phantom_folder,
)
from .world import (
    ALT_PROMPTS,
    CLASSES,
    GENERATOR_VERSION,
    INTENSITY_RULE,
    PROMPTS,
    PhantomSample,
)

__all__ = [
    "ALT_PROMPTS",
    "CLASSES",
    "GENERATOR_VERSION",
    "INTENSITY_RULE",
    "PROMPTS",
    "TASKS",
    "PhantomDataset",
    "PhantomPairs",
    "PhantomSample",
    "caption_words",
    "generate_sample",
    "intensity_rule_point",
    "pointing_hit",
    "pointing_verdict",
    "write_phantom_folder",
]

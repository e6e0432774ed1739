"""The quality filter's settings: one frozen dataclass, every default documented with its reason.

`QualityConfig.from_overrides(dict)` builds one from user settings (unknown names and bad values
raise one line naming the setting and what is allowed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

PROFILES = ("auto", "photo", "graphics")
_INF = float("inf")
_RANGES = {"min_side": (1, _INF), "max_aspect_ratio": (1.0, _INF), "photo_max_aspect_ratio": (1.0, _INF),
           "min_contrast": (0.0, 255.0), "min_jpeg_quality": (0, 100), "near_empty_share": (0.0, 1.0),
           "near_empty_ink": (0.0, 1.0), "dark_p95": (0.0, 255.0), "dark_mean": (0.0, 255.0),
           "bright_clip_share": (0.0, 1.0), "bright_rolloff": (0.0, 255.0), "bright_min_edge_ratio": (0.0, 1.5),
           "bright_min_mean": (0.0, 255.0), "bright_min_mid_ratio": (0.0, 1.5), "bright_max_edge_ratio": (0.0, 1.5),
           "bright_max_flat": (0.0, 1.0),
           "bright_raggedness": (0.0, _INF),
           "bright_texture_flat": (0.0, 1.0), "bright_area_share": (0.0, 1.0), "bright_photo_flat": (0.0, 1.0),
           "bright_max_boundary": (0.0, _INF), "bright_blown_share": (0.0, 1.0), "bright_dark_p05": (0.0, 255.0),
           "bright_dark_clip_share": (0.0, 1.0),
           "photo_min_edge": (0.0, 1.0),
           "photo_soft_edge": (0.0, 1.0), "photo_min_native_sharpness": (0.0, _INF),
           "graphic_min_edge": (0.0, 1.0), "photo_max_edge_ratio": (0.0, 1.5),
"photo_motion_edge_ratio": (0.0, 1.5),
           "photo_smear_edge_ratio": (0.0, 1.5), "photo_smear_spread": (0.0, 1.0), "photo_smear_mid_ratio": (0.0, 1.5),
           "photo_smear_max_flat": (0.0, 1.0),
           "photo_motion_spread": (0.0, 1.0), "graphic_max_edge_ratio": (0.0, 1.5),
           "graphic_soft_edge_ratio": (0.0, 1.5), "graphic_ratio_max_edge": (0.0, 1.0)}


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the quality filter. The content kind of each image (photo, graphic, cutout;
    `curation.quality.kind`) decides which checks apply; `profile` chooses how the kind is found:
    `auto` (default) from the image's own signals, `photo` judges every image as a photo (the
    pre-content-aware behaviour, for camera corpora), `graphics` judges every opaque image as a
    graphic (icon sets, clip art).

    Checks that apply to every kind:
    - min_side=8: a configurable target for the shorter side. Not the model's input size (CLIP
      upscales 16-32 px icons fine, and icon and flag sets ship 16x16, 29x20 and 32x32 files);
      below 8 px an image is a pixel, not a picture. Set it to 224 for a photo-only corpus.
    - max_aspect_ratio=6.0 (4.0 for photos, `photo_max_aspect_ratio`): a centre square crop keeps
      1/ratio of the image; banners and sprite strips in graphic sets go to 6:1.
    - min_contrast=2.0 (std of grey of the composited image): a blank page or lens cap (sensor
      noise and JPEG leave ~1.8); every clean image of the labelled set is above 5.
    - min_jpeg_quality=30 (`compressed`): the libjpeg quality estimated from the file's
      quantisation table; camera and web JPEGs are 70-98, "quality 4-10" re-encodes read 12-15
      (tables are clipped at 255, so very low qualities read a little high).
    - near_empty_share=0.98 with near_empty_ink=0.01 (`low_entropy`): an opaque image whose most
      common colour covers >= 98% and whose drawn pixels cover < 1% is an empty canvas with a speck;
      replaces the grey-entropy rule, which rejected two-tone logos and silhouettes.

    Photos and opaque graphics (kinds `photo`, `graphic`) get:
    - bright_clip_share=0.05 with bright_rolloff=236, bright_min_edge_ratio=0.58 and
      bright_min_mid_ratio=0.62 (`too_bright`, soft roll-off rule): more than 5% of the pixels
      clipped (grey >= 250, content.clip_share; clean photos of the labelled set clip < 1.6%), the
      unclipped pixels next to them are bright (median > 236, content.clip_rolloff: a blown-out
      photo rolls off softly into its clipped areas, clip art on a white page meets it at outlines
      and colours, median 150-225), the picture is not blurred (edge_ratio_min > 0.58), has a
      photo's fine texture (content.mid_ratio > 0.62: where every step is an isolated edge, crisp
      or blurred, the mean 2-pixel step is half the mean 4-pixel step; motion-blurred drawings on
      white read 0.50-0.64 but for ring-hatched ones (median 0.56), flat-colour clip art median
      0.59, over-exposed photos 0.59-0.93, median 0.70), and is not heavily compressed (jpeg
      quality >= min_jpeg_quality, files without JPEG tables count as 100): a blurred or blocky
      drawing on white rolls off softly too. bright_max_edge_ratio=0.92 (with this rule and the blown
      area rule): the blurriest edge ratio is under 0.92, not drawn art, whose edges step in one
      pixel in every direction: a sprite or clip art saved as JPEG on white rings softly into the
      page (JPEG copies in the dedup set: edge_ratio_min median 0.97), clean photos of the
      labelled set read at most 0.84. bright_max_flat=0.4 (this rule only): under 40% of the
      unclipped neighbour pairs are of equal grey (content.flat_share): JPEG copies of clip art on
      white keep their flat fills (median 0.33 where the rule fired before it), over-exposed
      photos read at most 0.30. Replaces "mean > 200 and 5th percentile > 100", which
      fired on pale clip art and missed over-exposed photos that keep some dark tones, and judges
      graphics too (an over-exposed photo often reads as a flat-colour graphic).
    - bright_raggedness=0.75 with bright_texture_flat=0.03 (`too_bright`, blown texture rule): more
      than bright_clip_share clipped, the clipping broken up into specks (clip_raggedness =
      content.clip_boundary / sqrt(clip_share (1 - clip_share)) > 0.75: over-exposed grass and
      gravel read 0.8-1.2, blown photos of solid subjects 0.08-0.55, drawings on a white page
      0.02-0.43, ring-hatched line art up to 0.79) and hardly any flat colour among the unclipped
      pixels (content.flat_share < 0.03: over-exposed grass and gravel 0.009-0.015, clean photos
      median 0.14, drawn art median 0.6-0.75, the ring-hatched art 0.01-0.9 but >= 0.06 where its
      raggedness passes): the clip threshold crosses a texture, which a drawn outline does not.
    - bright_area_share=0.3 with bright_photo_flat=0.12 and bright_max_boundary=0.35 (`too_bright`,
      blown area rule, with the edge-ratio and texture conditions above): more than 30% clipped,
      next to a solid, textured subject: flat_share < 0.12 and unclipped_boundary
      (content.clip_boundary / (1 - clip_share): how much of what is left touches the clipped
      area) < 0.35. A sky blown out behind a person (skimage's cameraman, astronaut, coins on a
      blown table) reads 0.12-0.34 and rolls off hard into the subject (median 217-236); line art
      and hatching on a white page (openclipart's ring-shaped "stars", flat_share 0.01-0.09) read
      0.31-1.35, their lines meeting the page all along.
    - bright_blown_share=0.99 (`too_bright`, blown frame rule): at least 99% of the pixels clipped:
      the whole frame is white (it is usually also `low_contrast`).
    - bright_min_mean=100 (`too_bright`, with the rules above): the opaque pixels' mean grey is above
      100. A white glyph or drawing on black (an MNIST digit, re-encoded or downscaled) clips and
      rolls off softly at its strokes, but is a dark picture, not an over-exposed one. Images with
      any transparency (opaque_fraction < 1) are never `too_bright`: over-exposure is a camera's
      fault, and white art with a cut-out shape (arcade's playing cards, rounded corners) rolls off
      softly into white by design; every over-exposed image of the labelled set is opaque.
    - bright_dark_p05=30 with bright_dark_clip_share=0.005 (`too_bright`, lifted shadows rule,
      photos only): a dark photo (mean grey below bright_min_mean) whose darkest 5% are lifted
      above grey 30 while more than 0.5% of it clips: a night sky exposed up (the Hubble deep
      field at +2.5 to +4 stops reads p05 32-52 with 0.8-1.8% clipped, its clean crops p05 about 9
      with nothing clipped); a white glyph on black keeps its black (p05 0).
    Photos (kind `photo`) also get:
    - dark_p95=50 with dark_mean=30 (`too_dark`): 95% of the pixels below grey 50 and a mean
      below 30 (an exposure 4+ stops short); night photos keep highlights above 50.
    - photo_min_edge=0.08 (`blurry`): crispness of the strongest edges (content.edge_sharpness:
      top-1% neighbour step over the grey range, scale-free, at native scale): a focused photo is
      0.1-0.7; a Gaussian blur of sigma 2.5% of the short side reads 0.07-0.1, 4% under 0.07.
    - photo_soft_edge=0.25 with photo_min_native_sharpness=3.0 (`blurry`, second rule): a soft
      photo (edge_sharpness < 0.25) whose Laplacian variance at native scale (never upscaled) is
      under 3 has no fine detail left anywhere; focused photos are 30-6,000, the softest clean
      ones of the labelled set (microscopy) 3-10.
    - photo_max_edge_ratio=0.58 (`blurry`, third rule): the sharpest direction's edge ratio
      (content.edge_ratio_max: top-1% 1-pixel step / top-1% 2-pixel step, 0.5 = every strong edge
      spread over 2+ px, 1 = one-pixel edges) under 0.58: even the crispest edges are soft.
      Gaussian blurs read 0.50-0.56 and upscaled thumbnails 0.50-0.58, focused photos 0.6-0.95.
      Sources that are soft by nature read like blurs (skimage's phase-contrast `cell`: 0.51-0.59);
      lower it (0.52 keeps most of them and still finds strong blurs) for microscopy corpora.
    - photo_motion_edge_ratio=0.55 with photo_motion_spread=0.05 (`blurry`, motion rule): the
      blurriest direction under 0.55 while the sharpest is at least 0.05 above it: a motion blur
      smears edges along its direction only. Focused photos' blurriest direction is >= 0.56
      (skimage's `clock`, documented as shot while moving the camera, reads 0.52-0.56; the bench
      labels it motion-blurred).
    - photo_smear_edge_ratio=0.59 with photo_smear_spread=0.08 and photo_smear_mid_ratio=0.64
      (`blurry`, second motion rule): the blurriest direction under 0.59 with the sharpest at least
      0.08 above it, in a picture without fine texture (content.mid_ratio < 0.64): a milder smear
      also evens out a photo's grain, which a focused photo keeps (clean photos' mid_ratio median
      0.72, motion-blurred ones that the first motion rule misses median 0.62), unless it is flat
      colour (photo_smear_max_flat=0.6, content.flat_share: arcade's sand and snow tiles, classed
      as photos, read 0.84-0.92 and have no grain to lose; clean photos median 0.14, 95% under 0.43).
    - The blur rules on edge ratios skip near-empty canvases (top_color_share >= near_empty_share):
      a speck on a page is `low_entropy`, its soft outline is no blur.
    Graphics and cutouts (flat colour, hard edges, or transparency) get:
    - graphic_min_edge=0.35 with graphic_soft_edge_ratio=0.66 (`blurry`): edge sharpness
      (strongest steps over the grey range) under 0.35 AND the sharpest direction's edge ratio under
      0.66. Crisp drawn edges are 0.45-1.0; a blurred or upscaled drawing is 0.1-0.3 with every
      edge ratio 0.50-0.68. The edge ratio keeps flat-colour art whose strongest steps are small
      anti-aliased steps between similar colours (arcade's 128 px tiles: sharpness 0.26-0.35, edge
      ratio 0.69-0.90; they were rejected before the ratio joined). Brightness and entropy are not
      judged for them: white icons on transparency and two-tone art are fine (a fully flat image
      still fails `low_contrast`).
    - graphic_max_edge_ratio=0.64 with graphic_ratio_max_edge=0.40 (`blurry`, second rule): the
      sharpest direction's edge ratio under 0.64 (drawn edges step in one pixel: 0.7-1.0; an
      upscaled or blurred drawing reads 0.50-0.64) AND edge sharpness under 0.40: a shape drawn with
      a wide anti-aliased outline (arcade's xbox d-pad prompts: ratio 0.49-0.59) still has its full
      contrast in few steps (sharpness 0.41-0.44).
    - reject_duplicates=True: only a cluster's representative enters the curated set.
    The edge-ratio, clipping and texture thresholds were chosen on half A of the labelled set (bench/accuracy.py
    `halves`, split by source) and are reported on both halves.
    """

    profile: str = "auto"
    min_side: int = 8
    max_aspect_ratio: float = 6.0
    photo_max_aspect_ratio: float = 4.0
    min_contrast: float = 2.0
    min_jpeg_quality: int = 30
    near_empty_share: float = 0.98
    near_empty_ink: float = 0.01
    dark_p95: float = 50.0
    dark_mean: float = 30.0
    bright_clip_share: float = 0.05
    bright_rolloff: float = 236.0
    bright_min_edge_ratio: float = 0.58
    bright_min_mean: float = 100.0
    bright_min_mid_ratio: float = 0.62
    bright_max_edge_ratio: float = 0.92
    bright_max_flat: float = 0.4
    bright_raggedness: float = 0.75
    bright_texture_flat: float = 0.03
    bright_area_share: float = 0.3
    bright_photo_flat: float = 0.12
    bright_max_boundary: float = 0.35
    bright_blown_share: float = 0.99
    bright_dark_p05: float = 30.0
    bright_dark_clip_share: float = 0.005
    photo_min_edge: float = 0.08
    photo_soft_edge: float = 0.25
    photo_min_native_sharpness: float = 3.0
    graphic_min_edge: float = 0.35
    photo_max_edge_ratio: float = 0.58
    photo_motion_edge_ratio: float = 0.55
    photo_motion_spread: float = 0.05
    photo_smear_edge_ratio: float = 0.59
    photo_smear_spread: float = 0.08
    photo_smear_mid_ratio: float = 0.64
    photo_smear_max_flat: float = 0.6
    graphic_max_edge_ratio: float = 0.64
    graphic_soft_edge_ratio: float = 0.66
    graphic_ratio_max_edge: float = 0.40
    reject_duplicates: bool = True

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"quality.profile must be one of {list(PROFILES)}, got {self.profile!r}")
        for name, (lo, hi) in _RANGES.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"quality.{name} must be in {lo}..{hi}, got {value}")

    @classmethod
    def from_overrides(cls, overrides: dict | None) -> QualityConfig:
        overrides = dict(overrides or {})
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown quality setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{**asdict(cls()), **overrides})

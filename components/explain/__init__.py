"""Explanations of the patch classifier: where it looks and where it would flag.

* :mod:`.heatmap`: sliding-window probability maps over whole mammograms (the breast only,
  batched, streaming) and their top regions.
* :mod:`.overlay`: drawing (a colour map blended over the grayscale image, boxes, outlines) and
  saving PNGs; shared by the heatmap tool, the saliency overlays and the evaluation report.
* :mod:`.gradcam`: saliency maps of single patches.

Stable API (other modules import these names):

``overlay.blend(gray_uint8, prob_map, alpha=0.5, colormap="jet", vmin=0.0, vmax=1.0, threshold=0.0) -> RGB uint8``
``overlay.colorize(values, colormap="jet", vmin=0.0, vmax=1.0) -> RGB uint8``
``overlay.draw_boxes(rgb, boxes, color=(255, 255, 0), width=3, labels=None) -> RGB uint8``
``overlay.draw_outline(rgb, mask, color=(0, 255, 0), width=2) -> RGB uint8``
``overlay.panels(gray_uint8, {name: map}, boxes=(), labels=None, height=800) -> RGB uint8`` (image + one panel per map)
``overlay.save_png(rgb_or_gray, path) -> Path`` and ``overlay.to_png_bytes(rgb_or_gray) -> bytes``
``heatmap.sliding_window_maps(predict_fn, image_uint8, pixel_spacing_mm, patch_mm, stride, batch, breast_mask=None, ...) -> HeatmapResult``
``heatmap.derived_maps(result) -> {name: map}`` (each class, ``malignant``, ``abnormal``)
``heatmap.top_regions(result, k=5, ...) -> [Region]``
"""

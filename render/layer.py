"""Text that is drawn once, not every frame: a widget's visuals rendered into a texture when they change.

The monitor redraws the whole canvas whenever a candle moves (up to 60 times a second in a trade
storm), but most of its text — the banner and the right column, some 1,500 glyphs — changes a few
times a second at most. On llvmpipe each glyph costs ~5 µs of every frame (the SDF text shader),
which took the window from 58 to 38 fps. A :class:`CachedLayer` keeps those visuals under a hidden
node, draws them into a framebuffer texture only when :meth:`CachedLayer.invalidate` was called (or the
widget moved), and otherwise draws one textured quad. Pixel for pixel the same image: the texture is
the widget's own rectangle of the canvas at the canvas's pixel scale, sampled nearest.
"""
from __future__ import annotations

import numpy as np
from vispy import gloo, scene
from vispy.visuals import Visual

_VERT = """
attribute vec2 a_position;
attribute vec2 a_texcoord;
varying vec2 v_texcoord;
void main() {
    gl_Position = $transform(vec4(a_position, 0.0, 1.0));
    v_texcoord = a_texcoord;
}
"""
_FRAG = """
uniform sampler2D u_texture;
varying vec2 v_texcoord;
void main() {
    gl_FragColor = vec4(texture2D(u_texture, v_texcoord).rgb, 1.0);
}
"""


class _CacheVisual(Visual):
    """The layer's texture on the widget's rectangle; renders the texture first when it is stale."""

    def __init__(self, layer: CachedLayer):
        super().__init__(vcode=_VERT, fcode=_FRAG)
        self._layer = layer
        self._pos = gloo.VertexBuffer(np.zeros((4, 2), np.float32))
        # the texture's row 0 is the bottom of the widget (GL), the widget's y runs down
        self._tex = gloo.VertexBuffer(np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.float32))
        self.shared_program["a_position"] = self._pos
        self.shared_program["a_texcoord"] = self._tex
        self._draw_mode = "triangle_fan"
        self.set_gl_state(None, depth_test=False, blend=False, cull_face=False)
        self._size: tuple | None = None

    def set_texture(self, tex: gloo.Texture2D, w: float, h: float) -> None:
        self.shared_program["u_texture"] = tex
        if (w, h) != self._size:
            self._size = (w, h)
            self._pos.set_data(np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32))

    def _prepare_transforms(self, view):
        view.view_program.vert["transform"] = view.get_transform()

    def _prepare_draw(self, view):
        return self._layer.render_cache()


_CacheNode = scene.visuals.create_visual_node(_CacheVisual)


class CachedLayer:
    """Put visuals under :attr:`root` (a child of ``widget``, in its pixel coordinates); call
    :meth:`invalidate` whenever one of them changed. ``background`` is what the texture is cleared
    to (the widget's colour: the cached visuals are composed over it, then drawn opaque)."""

    def __init__(self, widget, background):
        self.widget = widget
        self.background = background
        self.root = scene.Node(parent=widget)
        self.root.visible = False  # never drawn by the scene's pass; only into the texture
        self.quad = _CacheNode(self, parent=widget)
        self.dirty = True
        self.renders = 0  # how often the texture was redrawn (tests, profiling)
        self._rect: tuple | None = None
        self._key: tuple | None = None
        self._fbo = self._tex = None

    def invalidate(self) -> None:
        if not self.dirty:
            self.dirty = True
            self.quad.update()

    def render_cache(self) -> bool:
        """Redraw the texture if stale; False while the widget has no size yet (nothing to draw)."""
        canvas = self.widget.canvas
        w, h = (float(v) for v in self.widget.size)
        if canvas is None or w < 2 or h < 2:
            return False
        key = (w, h, tuple(self.widget.pos), tuple(canvas.size), canvas.pixel_scale)
        if key == self._key:  # laid out as last frame: same rectangle (no transform maths per frame)
            rect = self._rect
        else:
            self._key = key
            (x0, y0), (x1, y1) = self.widget.transforms.get_transform("visual", "canvas").map([[0, 0], [w, h]])[:, :2]
            # the widget's rectangle in the canvas framebuffer's pixels, whose origin is the bottom left
            s = canvas.pixel_scale
            rect = (round(x0 * s), round((canvas.size[1] - y1) * s), max(1, round((x1 - x0) * s)),
                    max(1, round((y1 - y0) * s)))
        if rect != self._rect:
            self._rect = rect
            self.dirty = True
            shape = (rect[3], rect[2])
            if self._tex is None or self._tex.shape[:2] != shape:
                if self._tex is not None:  # resized: give the old ones back
                    self._fbo.delete()
                    self._tex.delete()
                self._tex = gloo.Texture2D(shape=shape + (4,), interpolation="nearest")
                self._fbo = gloo.FrameBuffer(color=self._tex)
            self.quad.set_texture(self._tex, w, h)
        if self.dirty:
            self._draw_into_texture(canvas, rect)
        return True

    def _draw_into_texture(self, canvas, rect) -> None:
        # Not through the canvas's FBO stack: pushing (and popping) a framebuffer makes VisPy recompute every
        # transform of the scene, twice each way (~10 ms with this chart, paid on every re-render). The visuals
        # keep the transforms they have for the canvas's framebuffer; a viewport offset by the layer's position
        # puts the layer's rectangle at the texture's origin.
        vp = canvas._vp_stack[-1] if canvas._vp_stack else (0, 0, *canvas.physical_size)
        self._fbo.activate()
        try:
            canvas.context.set_viewport(-rect[0], -rect[1], vp[2], vp[3])
            canvas.context.clear(color=self.background, depth=True)
            # the root stays hidden from the scene's own pass; its children are drawn here, in order
            for node in sorted(self.root.children, key=lambda n: n.order):
                if node.visible and hasattr(node, "draw"):
                    node.draw()
        finally:
            self._fbo.deactivate()
            canvas.context.set_viewport(*vp)
        self.dirty = False
        self.renders += 1

// The widget paints its own light surface, so it reads the same under JupyterLab's light and dark themes.
export const STYLE = `
.cnnviz-scatter3d {
  font: 12px/1.35 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: #222;
  background: #fff;
  border: 1px solid #d9d9d9;
  border-radius: 4px;
  overflow: hidden;
  box-sizing: border-box;
}
.cnnviz-scatter3d-toolbar {
  display: flex;
  flex-wrap: wrap;
  align-items: center;
  gap: 6px;
  padding: 6px 8px;
  border-bottom: 1px solid #e6e6e6;
  background: #fafafa;
}
.cnnviz-scatter3d-button, .cnnviz-scatter3d-select {
  font: inherit;
  color: #222;
  background: #fff;
  border: 1px solid #c8c8c8;
  border-radius: 3px;
  padding: 2px 8px;
  height: 24px;
  cursor: pointer;
}
.cnnviz-scatter3d-select { width: auto; max-width: 220px; }
.cnnviz-scatter3d-button.active { background: #2f6fb3; border-color: #2f6fb3; color: #fff; }
.cnnviz-scatter3d-size { display: inline-flex; align-items: center; gap: 4px; color: #555; }
.cnnviz-scatter3d-size input { width: 90px; }
.cnnviz-scatter3d-status { margin-left: auto; color: #555; }
.cnnviz-scatter3d-stage { position: relative; overflow: hidden; }
.cnnviz-scatter3d-stage canvas { display: block; }
.cnnviz-scatter3d-legend {
  position: absolute;
  top: 8px;
  right: 8px;
  max-height: calc(100% - 16px);
  overflow-y: auto;
  padding: 6px 8px;
  background: rgba(255, 255, 255, 0.92);
  border: 1px solid #e0e0e0;
  border-radius: 4px;
}
.cnnviz-scatter3d-legend-item {
  display: flex;
  align-items: center;
  gap: 6px;
  padding: 1px 2px;
  cursor: pointer;
  white-space: nowrap;
  max-width: 220px;
  overflow: hidden;
  text-overflow: ellipsis;
}
.cnnviz-scatter3d-legend-item:hover { background: #eef3fa; }
.cnnviz-scatter3d-swatch { flex: none; width: 11px; height: 11px; border-radius: 50%; }
.cnnviz-scatter3d-tooltip {
  position: absolute;
  top: 0;
  left: 0;
  display: none;
  gap: 8px;
  align-items: center;
  padding: 6px;
  background: #fff;
  border: 1px solid #bbb;
  border-radius: 4px;
  box-shadow: 0 2px 8px rgba(0, 0, 0, 0.18);
  pointer-events: none;
  white-space: nowrap;
  z-index: 2;
}
.cnnviz-scatter3d-tooltip canvas { border: 1px solid #eee; }
.cnnviz-scatter3d-ring {
  position: absolute;
  top: -9px;
  left: -9px;
  width: 14px;
  height: 14px;
  border: 2px solid #111;
  border-radius: 50%;
  display: none;
  pointer-events: none;
}
.cnnviz-scatter3d-lasso {
  position: absolute;
  inset: 0;
  width: 100%;
  height: 100%;
  display: none;
  pointer-events: none;
}
.cnnviz-scatter3d-lasso polygon {
  fill: rgba(47, 111, 179, 0.12);
  stroke: #2f6fb3;
  stroke-width: 1.5;
  stroke-dasharray: 4 3;
}
.cnnviz-scatter3d-error { padding: 16px; color: #a00; }
`;

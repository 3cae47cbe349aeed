// The one DOM helper the pack's settings and panel share; every text is set as text, never parsed as markup.
export function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

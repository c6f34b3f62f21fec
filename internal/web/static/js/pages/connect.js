import { page as layout } from "../ui.js";
export function page() { return layout("connect", { intro: "coming" }); }
